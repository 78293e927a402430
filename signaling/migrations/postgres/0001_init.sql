-- Accounts, public IDs, devices and registrar bindings (PostgreSQL).
-- Times are Unix seconds. Limits left NULL mean "the configured default".
-- Integers are BIGINT throughout so that both backends decode them as i64.

CREATE TABLE accounts (
    id            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    login         TEXT    NOT NULL UNIQUE,
    ha1_md5       TEXT    NOT NULL,
    ha1_sha256    TEXT    NOT NULL,
    country_code  TEXT    NOT NULL,
    username      TEXT    UNIQUE,
    display_name  TEXT,
    limit_mobile  BIGINT  CHECK (limit_mobile IS NULL OR limit_mobile >= 0),
    limit_desktop BIGINT  CHECK (limit_desktop IS NULL OR limit_desktop >= 0),
    limit_web     BIGINT  CHECK (limit_web IS NULL OR limit_web >= 0),
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

-- Phone numbers in normalised E.164 form (digits only, no '+').
CREATE TABLE phone_numbers (
    number     TEXT   PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE INDEX phone_numbers_account ON phone_numbers (account_id);

CREATE TABLE devices (
    account_id    BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    instance_id   TEXT   NOT NULL,
    class         TEXT   NOT NULL CHECK (class IN ('mobile', 'tablet', 'desktop', 'web')),
    name          TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    push_provider TEXT,
    push_token    TEXT,
    PRIMARY KEY (account_id, instance_id)
);

CREATE TABLE bindings (
    account_id  BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    instance_id TEXT   NOT NULL,
    reg_id      BIGINT NOT NULL,
    contact_uri TEXT   NOT NULL,
    expires_at  BIGINT NOT NULL,
    call_id     TEXT   NOT NULL,
    cseq        BIGINT NOT NULL,
    transport   TEXT   NOT NULL,
    source      TEXT   NOT NULL,
    local       TEXT   NOT NULL,
    user_agent  TEXT,
    PRIMARY KEY (account_id, instance_id, reg_id)
);
CREATE INDEX bindings_expires ON bindings (expires_at);
