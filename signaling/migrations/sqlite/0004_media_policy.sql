-- How the account's calls carry media: 'ice' (end to end, the relay offered as a
-- candidate), 'force-relay' (always through a media relay) or 'off' (no relay).
ALTER TABLE accounts ADD COLUMN media_policy TEXT NOT NULL DEFAULT 'ice';
