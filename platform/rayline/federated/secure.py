"""Secure aggregation by pairwise masks (Bonawitz et al. 2017, without its dropout recovery).

Each client of a round holds an X25519 key pair and publishes its public key. Every pair of clients derives the
same secret by Diffie-Hellman, and from it (HKDF) the seed of a mask. Client i adds the mask of each pair (i, j)
with j > i and subtracts it for j < i, so the masks cancel in the sum of all the round's clients, and only in
that sum. The arithmetic is on fixed-point integers modulo 2^64 (numpy's uint64 wraps), where cancelling is
exact; updates are scaled by 2^FRACTION_BITS and rounded first, so the unmasked sum is the true sum to within
clients * 2^-(FRACTION_BITS + 1) per coordinate.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FRACTION_BITS = 24
"""Fixed-point precision: about 6e-8 per coordinate, with room for sums up to 2^39 in magnitude."""
SCALE = float(1 << FRACTION_BITS)


def new_key() -> tuple[X25519PrivateKey, bytes]:
    """A client's key pair for one round: the private key, and the public key's 32 bytes to publish."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, public


def pair_seed(private: X25519PrivateKey, peer_public: bytes, round_tag: bytes) -> int:
    """The seed both clients of a pair derive: DH secret, expanded by HKDF with the round as context."""
    secret = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"rayline-mask:" + round_tag).derive(secret)
    return int.from_bytes(derived, "big")


def encode(vector: np.ndarray) -> np.ndarray:
    """float vector -> fixed-point uint64 (two's complement for negatives)."""
    return np.round(np.asarray(vector, dtype=np.float64) * SCALE).astype(np.int64).view(np.uint64)


def decode(total: np.ndarray) -> np.ndarray:
    """A (wrapped) uint64 sum -> float vector."""
    return total.view(np.int64).astype(np.float64) / SCALE


def mask_for(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(np.uint64).max, size=size, dtype=np.uint64, endpoint=True)


def masked(
    vector: np.ndarray, me: int, private: X25519PrivateKey, publics: dict[int, bytes], round_tag: bytes
) -> np.ndarray:
    """This client's update, fixed-point and masked against every other client in `publics` (its own id
    included or not)."""
    out = encode(vector)
    for peer, public in publics.items():
        if peer == me:
            continue
        mask = mask_for(pair_seed(private, public, round_tag), len(out))
        out = out + mask if me < peer else out - mask  # uint64 wraps: the pair's two masks cancel exactly
    return out


def unmasked_sum(masked_vectors: list[np.ndarray]) -> np.ndarray:
    """The sum of every masked update of a round: the masks cancel when all of the round's clients are in it."""
    total = np.zeros_like(masked_vectors[0])
    for vector in masked_vectors:
        total = total + vector
    return decode(total)
