-- The account's no-answer rule: where a call goes when no device answered in time
-- (for example a voicemail URI). NULL: the call ends with 480.
ALTER TABLE accounts ADD COLUMN no_answer_forward TEXT;
