-- Alerts firing: one row per kind and subject while the condition lasts, so that an alert is
-- sent once when it starts (whichever replica sees it first) and resolved once when it clears.
CREATE TABLE alerts (
    kind    TEXT NOT NULL,
    subject TEXT NOT NULL,
    since   TEXT NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (kind, subject)
);
