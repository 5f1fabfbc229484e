"""The untrusted server: a gRPC coordinator driving Ray workers over ciphertexts.

Honest-but-curious: it follows the protocol but must learn nothing. It only ever holds public
contexts (checked on arrival, :func:`hefl.params.check_public_context`) and ciphertexts.
"""
