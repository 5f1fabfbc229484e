"""hefl's cryptographic protocols, as small types with no I/O.

Each protocol has the shape of Lattigo's ``multiparty`` protocols: a share or request type that
travels, a step that combines (aggregation), a step that finalizes; its messages are frozen
dataclasses with one ``to_proto``/``from_proto`` pair each, converted where they cross the
network and nowhere else. A protocol's docstring says what it computes, who sees what, and its
security and precision budget.

- :mod:`hefl.protocols.stats`: encrypted statistics (each party's share, the coordinator's sum,
  the key holder's summary);
- :mod:`hefl.protocols.refresh`: the masked refresh-and-step of every training iteration (the
  coordinator's half and the key holder's half);
- :mod:`hefl.protocols.masks`: the uniform masks the refresh draws, from ``os.urandom``;
- :mod:`hefl.protocols.keys`: what a protocol asks of the secret key, as interfaces that only
  :mod:`parties` implements. Nothing in this package holds a secret key.
"""
