-- Saga subjects and secret status carry their namespace (`secret:NAME`, `backup:NAME`):
-- names are unique within a section of the configuration only, and a backup set and a secret
-- of one name must not block each other under the one-in-flight index.
UPDATE sagas SET subject = 'backup:' || subject WHERE kind LIKE 'backup.%' AND subject NOT LIKE '%:%';
UPDATE sagas SET subject = 'secret:' || subject WHERE kind LIKE 'rotation.%' AND subject NOT LIKE '%:%';
UPDATE secret_status SET subject = 'secret:' || subject WHERE subject NOT LIKE '%:%';
-- The step that failed, kept while the saga unwinds through earlier ones, so that a resumed
-- unwind reports the step that failed rather than the one it was undoing.
ALTER TABLE sagas ADD COLUMN failed_step TEXT;
-- Never written but as 0: retries are counted in the evidence of each attempt instead.
ALTER TABLE sagas DROP COLUMN attempts;
