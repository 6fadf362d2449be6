-- The coordinator store's schema as of the first versioned release. IF NOT EXISTS: stores created before
-- migrations were versioned already have these tables, and adopt this version without change.
CREATE TABLE IF NOT EXISTS bundles (id VARCHAR(64) PRIMARY KEY, body TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS targets (name VARCHAR(255) PRIMARY KEY, engine VARCHAR(16) NOT NULL, labels TEXT NOT NULL, agent VARCHAR(255) NOT NULL);

CREATE TABLE IF NOT EXISTS plans (id VARCHAR(64) PRIMARY KEY, bundle VARCHAR(64) NOT NULL, selector TEXT NOT NULL,
    goal TEXT NOT NULL, strategy TEXT NOT NULL, phase VARCHAR(16), rollback_of VARCHAR(64),
    approved_wave BIGINT NOT NULL, state VARCHAR(32) NOT NULL, created_at VARCHAR(40) NOT NULL);

CREATE TABLE IF NOT EXISTS steps (plan_id VARCHAR(64) NOT NULL, target VARCHAR(255) NOT NULL, wave BIGINT NOT NULL,
    state VARCHAR(32) NOT NULL, token BIGINT, error TEXT, goal TEXT, version_before BIGINT, version_after BIGINT,
    updated_at VARCHAR(40) NOT NULL, PRIMARY KEY (plan_id, target));

CREATE INDEX IF NOT EXISTS plans_state ON plans (state);

CREATE INDEX IF NOT EXISTS steps_by_state ON steps (plan_id, state, wave, target);

CREATE TABLE IF NOT EXISTS events (plan_id VARCHAR(64) NOT NULL, seq BIGINT NOT NULL, at VARCHAR(40) NOT NULL,
    target VARCHAR(255), kind VARCHAR(64) NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (plan_id, seq));

CREATE TABLE IF NOT EXISTS audit (id VARCHAR(32) PRIMARY KEY, at VARCHAR(40) NOT NULL, actor VARCHAR(255) NOT NULL,
    action VARCHAR(64) NOT NULL, plan_id VARCHAR(64), detail TEXT NOT NULL);
