"""hefl: federated logistic regression on CKKS-encrypted data.

This package is the contract both roles share and the maths, and nothing else: it imports no
role (:mod:`coordinator`, :mod:`parties`) and no tool (:mod:`tools`, :mod:`bench`).

- :mod:`hefl.params`: the CKKS parameter sets and the check every received context passes;
- :mod:`hefl.codec`: where values sit in the slots (packing layout, statistics vectors);
- :mod:`hefl.algorithm`: the training maths in plaintext;
- :mod:`hefl.sealio`: ciphertexts as bytes; :mod:`hefl.validate`: the checks every received
  ciphertext passes before and after it is loaded; :mod:`hefl.chunks`: framing of large payloads;
- :mod:`hefl.protocols`: the cryptographic protocols (encrypted statistics, masked refresh) as
  types with no I/O; secret-key steps go through interfaces that only :mod:`parties` implements;
- :mod:`hefl.messages`: dataclasses to and from protobuf; :mod:`hefl.v1`: the generated stubs;
- :mod:`hefl.errors`: the domain errors every role raises.

Secret keys exist only in :mod:`parties`; :mod:`coordinator` sees public contexts and
ciphertexts.
"""

__version__ = "0.1.0"
