"""n-of-n multiparty CKKS: the collective protocols, as types with no I/O (issue 13, phase 1).

Each roster party i holds a share s_i of a secret key s = s_1 + ... + s_n that nobody holds;
every operation that needs s is a protocol all n parties take part in (Mouchet,
Troncoso-Pastoriza, Bossuat, Hubaux, "Multiparty Homomorphic Encryption from
Ring-Learning-with-Errors", PoPETs 2021; the shape of Lattigo's ``multiparty`` package). Each
protocol has a ``...Protocol`` type with the party's step (``gen_share``, taking the party's
:class:`~.secret.SecretKeyShare`), the aggregator's ``aggregate_shares`` and a finalization, and
``...Share`` types that serialize (``to_bytes`` / ``from_bytes``, validated where they enter).

- :mod:`.crs`: the seed agreed by commit-then-reveal, and common random polynomials from
  SHAKE-256 with a label per job, protocol, key, gadget index and iteration;
- :mod:`.secret`: the party's key share and ephemeral keys, the only secrets here (imported
  by parties only; not re-exported from this package);
- :mod:`.keygen`: collective public key (1 round) and relinearization key (2 rounds), loaded
  into an ordinary public TenSEAL context (:func:`.keygen.public_context`);
- :mod:`.keyswitch`: collective decryption and public-key switching to one party's key, with
  smudging noise sized for a stated statistical security (:class:`.keyswitch.Smudging`);
- :mod:`.refresh`: collective masked refresh (to a fresh top-level ciphertext) and its
  slot-sum transform variant, for the optimizer step on masked values;
- :mod:`.ring`, :mod:`.sampling`, :mod:`.seal_layout`, :mod:`.shares`: SEAL's RNS ring and NTT,
  CSPRNG and XOF sampling, SEAL's serialization layout, the shares' tags and wire format.

Trust model: semi-honest parties and aggregator; any n - 1 parties colluding with the
coordinator learn nothing of the last party's data or key share beyond what the protocol
reveals on purpose (each revealed value's statistical security is in its protocol's docstring).
n-of-n: one missing party blocks every protocol. No proofs that shares are well formed: an
actively malicious party can make a key or a result wrong, and an aggregator that picks the
ciphertexts parties act on can extract key bits, so parties act only on ciphertexts of steps
they agreed to (phase 2: their state machines). Secret key shares live only in the parties'
processes; the coordinator's side of every protocol takes none.
"""

from hefl.protocols.collective.crs import (
    CommonRandomString,
    CrsLabel,
    SeedAgreementParty,
    SeedAgreementProtocol,
    SeedCommitment,
    SeedReveal,
)
from hefl.protocols.collective.keygen import (
    CollectivePublicKey,
    CollectiveRelinKey,
    PublicKeyGenProtocol,
    PublicKeyShare,
    RelinKeyGenProtocol,
    RelinKeyRound1Share,
    RelinKeyRound2Share,
    public_context,
    relin_key_noise_std,
)
from hefl.protocols.collective.keyswitch import (
    REVEAL_SCALE_BITS,
    CollectiveDecryptProtocol,
    DecryptionBudget,
    DecryptionShare,
    PublicKeySwitchProtocol,
    PublicKeySwitchShare,
    Smudging,
    TargetPublicKey,
    ciphertext_of,
    fresh_noise_std,
    refreshed_noise_std,
    sum_noise_std,
)
from hefl.protocols.collective.refresh import (
    MaskedTransformProtocol,
    RefreshProtocol,
    RefreshShare,
    mask_bits,
)
from hefl.protocols.collective.shares import CollectiveJob

__all__ = [
    "REVEAL_SCALE_BITS",
    "CollectiveDecryptProtocol",
    "CollectiveJob",
    "CollectivePublicKey",
    "CollectiveRelinKey",
    "CommonRandomString",
    "CrsLabel",
    "DecryptionBudget",
    "DecryptionShare",
    "MaskedTransformProtocol",
    "PublicKeyGenProtocol",
    "PublicKeyShare",
    "PublicKeySwitchProtocol",
    "PublicKeySwitchShare",
    "RefreshProtocol",
    "RefreshShare",
    "RelinKeyGenProtocol",
    "RelinKeyRound1Share",
    "RelinKeyRound2Share",
    "SeedAgreementParty",
    "SeedAgreementProtocol",
    "SeedCommitment",
    "SeedReveal",
    "Smudging",
    "TargetPublicKey",
    "ciphertext_of",
    "fresh_noise_std",
    "mask_bits",
    "public_context",
    "refreshed_noise_std",
    "relin_key_noise_std",
    "sum_noise_std",
]
