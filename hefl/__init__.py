"""hefl: federated logistic regression on CKKS-encrypted data.

This package is the contract both roles share: CKKS parameter sets (:mod:`hefl.params`), the
packing codec (:mod:`hefl.codec`), the training maths (:mod:`hefl.algorithm`), wire helpers
(:mod:`hefl.wire`) and the generated gRPC stubs (:mod:`hefl.v1`). Secret keys exist only in
:mod:`parties`; :mod:`coordinator` sees public contexts and ciphertexts.
"""

__version__ = "0.1.0"
