-- The schedule each job's next run was computed from: a job whose schedule changed in the
-- configuration is planned again from its own records, not left waiting for the old slot.
ALTER TABLE daemon_jobs ADD COLUMN schedule TEXT;
