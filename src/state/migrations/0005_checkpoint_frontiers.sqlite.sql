-- Each checkpoint vigil signs keeps the Merkle frontier it signed, so that the next checkpoint
-- re-verifies only the records appended since (hashes, links, the head row rebuilt) instead of
-- the whole ledger. Older checkpoints have none: the first checkpoint after this migration
-- re-verifies from the genesis record once.
ALTER TABLE evidence_checkpoints ADD COLUMN frontier BLOB;
