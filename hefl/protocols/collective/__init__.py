"""n-of-n multiparty CKKS: the collective protocols, as types with no I/O (issue 13, phase 1)."""
