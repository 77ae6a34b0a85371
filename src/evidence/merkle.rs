//! The RFC 9162 (RFC 6962) Merkle tree over ledger records: hashes, roots, and inclusion,
//! consistency and range proofs with their verifiers.
//!
//! Leaf hash `SHA-256(0x00 || record)`, node hash `SHA-256(0x01 || left || right)`; the tree of
//! `n` leaves splits at the largest power of two below `n`. Proofs are lists of sibling hashes
//! from the leaf (or old tree) upwards, in the RFC's order, so that any RFC 9162 verifier
//! (Certificate Transparency's, Go's `sumdb/tlog`) accepts them.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(data);
    hasher.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]): the root of the tree whose leaf hashes are `leaves`.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The leaves of a growing tree reduced to its perfect subtrees, largest first, so that a
/// root is available after every append in O(log n) space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(leaf count, hash)` of each perfect subtree, counts strictly decreasing.
    subtrees: Vec<(u64, Hash)>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut carry = (1u64, leaf);
        while let Some(&(count, hash)) = self.subtrees.last() {
            if count != carry.0 {
                break;
            }
            self.subtrees.pop();
            carry = (count * 2, node_hash(&hash, &carry.1));
        }
        self.subtrees.push(carry);
        self.size += 1;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.subtrees.iter().rev();
        let Some(&(_, last)) = subtrees.next() else {
            return empty_root();
        };
        subtrees.fold(last, |right, (_, left)| node_hash(left, &right))
    }

    /// A compact byte form: the size, then each subtree's hash (their counts follow from the size).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.size.to_be_bytes().to_vec();
        for (_, hash) in &self.subtrees {
            bytes.extend_from_slice(hash);
        }
        bytes
    }

    /// Reads [`Frontier::to_bytes`] back; `None` if the bytes do not fit the size they claim.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let size = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let hashes = &bytes[8..];
        let counts: Vec<u64> = (0..64).rev().map(|bit| 1u64 << bit).filter(|count| size & count != 0).collect();
        if hashes.len() != counts.len() * 32 {
            return None;
        }
        let subtrees = counts
            .into_iter()
            .zip(hashes.chunks_exact(32))
            .map(|(count, hash)| (count, hash.try_into().expect("chunks of 32")))
            .collect();
        Some(Self { size, subtrees })
    }
}

/// PATH(m, D[n]): the inclusion proof of leaf `index` in the tree of `leaves`.
///
/// Panics if `index` is out of range; callers check it against the tree size first.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    assert!(index < leaves.len(), "leaf {index} is outside a tree of {}", leaves.len());
    let mut proof = Vec::new();
    path(index, leaves, &mut proof);
    proof
}

fn path(m: usize, leaves: &[Hash], proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..k], proof);
        proof.push(root(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], proof);
        proof.push(root(&leaves[..k]));
    }
}

/// Checks an inclusion proof (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &r == root
}

/// PROOF(m, D[n]): the consistency proof between the tree of the first `old_size` leaves and
/// the tree of all `leaves`.
///
/// Panics unless `0 < old_size <= leaves.len()`.
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Vec<Hash> {
    assert!(old_size > 0 && old_size <= leaves.len(), "no consistency proof from {old_size} to {}", leaves.len());
    let mut proof = Vec::new();
    subproof(old_size, leaves, true, &mut proof);
    proof
}

fn subproof(m: usize, leaves: &[Hash], whole: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], whole, proof);
        proof.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root(&leaves[..k]));
    }
}

/// Checks a consistency proof (RFC 9162 section 2.1.4.2).
pub fn verify_consistency(old_size: u64, new_size: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    &fr == old_root && &sr == new_root && s == 0
}

/// A compact range proof: the roots of the largest subtrees outside leaves `[start, end)` of
/// the tree of all `leaves`, left to right. With the range's leaves they give the tree's root
/// ([`range_root`]), so a reader holding a slice of the log checks it against a signed
/// checkpoint with O(log n) hashes, whatever the log's size.
///
/// Panics unless `start < end <= leaves.len()`.
pub fn range_proof(leaves: &[Hash], start: usize, end: usize) -> Vec<Hash> {
    assert!(start < end && end <= leaves.len(), "no range [{start}, {end}) in a tree of {}", leaves.len());
    let mut proof = Vec::new();
    prove_range(leaves, 0, start, end, &mut proof);
    proof
}

fn prove_range(leaves: &[Hash], offset: usize, start: usize, end: usize, proof: &mut Vec<Hash>) {
    let (lo, hi) = (offset, offset + leaves.len());
    if hi <= start || lo >= end {
        proof.push(root(leaves));
    } else if !(start <= lo && hi <= end) {
        // Partly inside: at least two leaves, so it splits.
        let k = split(leaves.len());
        prove_range(&leaves[..k], offset, start, end, proof);
        prove_range(&leaves[k..], offset + k, start, end, proof);
    }
}

/// The root of the tree of `size` leaves whose leaves from index `start` on are `range`, given
/// `proof` ([`range_proof`]); `None` when the proof does not fit that shape. Work follows the
/// two edges of the range, never `size` itself, so a forged size cannot exhaust memory.
pub fn range_root(size: u64, start: u64, range: &[Hash], proof: &[Hash]) -> Option<Hash> {
    let end = start.checked_add(range.len() as u64)?;
    if range.is_empty() || end > size {
        return None;
    }
    let mut proof = proof.iter();
    let root = range_walk(0, size, start, end, range, &mut proof)?;
    proof.next().is_none().then_some(root)
}

fn range_walk(
    lo: u64,
    hi: u64,
    start: u64,
    end: u64,
    range: &[Hash],
    proof: &mut std::slice::Iter<'_, Hash>,
) -> Option<Hash> {
    if hi <= start || lo >= end {
        return proof.next().copied();
    }
    if start <= lo && hi <= end {
        let (from, to) = (usize::try_from(lo - start).ok()?, usize::try_from(hi - start).ok()?);
        return Some(root(range.get(from..to)?));
    }
    let k = 1u64 << (u64::BITS - 1 - (hi - lo - 1).leading_zeros());
    let left = range_walk(lo, lo + k, start, end, range, proof)?;
    let right = range_walk(lo + k, hi, start, end, range, proof)?;
    Some(node_hash(&left, &right))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_proofs_verify_for_every_range_of_small_trees_and_fail_when_anything_changes() {
        for size in 1..=33usize {
            let leaves: Vec<Hash> = (0..size).map(|i| leaf_hash(&[i as u8])).collect();
            let expected = root(&leaves);
            for start in 0..size {
                for end in start + 1..=size {
                    let proof = range_proof(&leaves, start, end);
                    assert!(proof.len() <= 2 * 64, "size {size} [{start},{end}): {} hashes", proof.len());
                    let range = &leaves[start..end];
                    assert_eq!(range_root(size as u64, start as u64, range, &proof), Some(expected));
                    let mut changed = range.to_vec();
                    changed[0][0] ^= 1;
                    assert_ne!(range_root(size as u64, start as u64, &changed, &proof), Some(expected));
                    if start > 0 {
                        assert_ne!(range_root(size as u64, start as u64 - 1, range, &proof), Some(expected));
                    }
                    if let Some(first) = proof.first() {
                        let mut forged = proof.clone();
                        forged[0] = node_hash(first, first);
                        assert_ne!(range_root(size as u64, start as u64, range, &forged), Some(expected));
                    }
                }
            }
        }
        // A forged size is refused or fails, without allocating by it.
        let leaves: Vec<Hash> = (0..5u8).map(|i| leaf_hash(&[i])).collect();
        let proof = range_proof(&leaves, 1, 3);
        assert_ne!(range_root(1 << 62, 1, &leaves[1..3], &proof), Some(root(&leaves)));
    }

    fn h(text: &str) -> Hash {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    /// The Certificate Transparency reference leaves and roots (RFC 6962 test vectors).
    fn reference() -> (Vec<Hash>, Vec<Hash>) {
        let data = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
        let leaves = data.iter().map(|d| leaf_hash(&hex::decode(d).unwrap())).collect();
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        (leaves, roots.iter().map(|r| h(r)).collect())
    }

    #[test]
    fn roots_match_the_rfc_6962_vectors() {
        let (leaves, roots) = reference();
        assert_eq!(hex::encode(empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let mut frontier = Frontier::new();
        for n in 1..=8 {
            assert_eq!(root(&leaves[..n]), roots[n - 1], "size {n}");
            frontier.push(leaves[n - 1]);
            assert_eq!(frontier.root(), roots[n - 1], "frontier at size {n}");
        }
    }

    #[test]
    fn proofs_match_the_rfc_6962_vectors() {
        let (leaves, _) = reference();
        let inclusion_0_8 = [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ];
        let inclusion_5_8 = [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ];
        let consistency_2_5 = [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ];
        assert_eq!(inclusion_proof(&leaves, 0), inclusion_0_8.map(h));
        assert_eq!(inclusion_proof(&leaves, 5), inclusion_5_8.map(h));
        assert_eq!(consistency_proof(&leaves[..5], 2), consistency_2_5.map(h));
    }

    #[test]
    fn frontier_round_trips_through_bytes() {
        let mut frontier = Frontier::new();
        for i in 0..77u32 {
            frontier.push(leaf_hash(&i.to_be_bytes()));
            let back = Frontier::from_bytes(&frontier.to_bytes()).unwrap();
            assert_eq!(back, frontier);
        }
        assert!(Frontier::from_bytes(&frontier.to_bytes()[..40]).is_none());
    }

    /// Leaf indices worth proving in a tree of `n`: all of them in small trees, and in larger
    /// ones the edges, the middle and both sides of every power-of-two boundary.
    fn probes(n: usize) -> Vec<usize> {
        if n <= 40 {
            return (0..n).collect();
        }
        let mut probes = vec![0, 1, n / 2, n - 2, n - 1];
        let mut boundary = 1;
        while boundary < n {
            probes.extend([boundary - 1, boundary]);
            boundary *= 2;
        }
        probes.sort_unstable();
        probes.dedup();
        probes
    }

    /// Proofs for every tree size from 1 to 300 verify, and none survives a changed hash.
    #[test]
    fn proofs_for_every_size_up_to_300_verify_and_break_when_changed() {
        let leaves: Vec<Hash> = (0..300u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut frontier = Frontier::new();
        let mut roots = Vec::new();
        for leaf in &leaves {
            frontier.push(*leaf);
            roots.push(frontier.root());
        }
        for n in 1..=300usize {
            let tree = &leaves[..n];
            let tree_root = &roots[n - 1];
            assert_eq!(&root(tree), tree_root, "frontier and recursion disagree at {n}");
            for i in probes(n) {
                let proof = inclusion_proof(tree, i);
                assert!(verify_inclusion(&tree[i], i as u64, n as u64, &proof, tree_root), "inclusion {i}/{n}");
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j][j % 32] ^= 1;
                    assert!(
                        !verify_inclusion(&tree[i], i as u64, n as u64, &bad, tree_root),
                        "changed inclusion {i}/{n}"
                    );
                }
                if !proof.is_empty() {
                    assert!(!verify_inclusion(&tree[i], i as u64, n as u64, &proof[1..], tree_root));
                }
                assert!(!verify_inclusion(&leaf_hash(b"other"), i as u64, n as u64, &proof, tree_root));
            }
            for m in probes(n).into_iter().map(|i| i + 1) {
                let proof = consistency_proof(tree, m);
                let old_root = &roots[m - 1];
                assert!(verify_consistency(m as u64, n as u64, old_root, tree_root, &proof), "consistency {m}->{n}");
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j][0] ^= 0x80;
                    assert!(!verify_consistency(m as u64, n as u64, old_root, tree_root, &bad), "changed {m}->{n}");
                }
            }
        }
    }
}
