"""The data owners' side of hefl: the only place where a CKKS secret key exists.

A party loads and validates its own CSV (:mod:`parties.data`), encrypts its rows in the packed
layout and uploads them (:mod:`parties.client`). One party per job is the key holder
(:mod:`parties.keyholder`): it generates the context, keeps the secret key in its process and
answers the coordinator's decryption and refresh tasks on a stream it opened itself.
"""
