-- Versions are strings of up to 38 digits: a timestamp with a sequence suffix (20 digits) does not fit in BIGINT.
-- The steps table keeps the versions it records as text. SQLite cannot change a column's type, so the table is
-- rebuilt (in this migration's transaction); every row is kept.
CREATE TABLE steps_v2 (plan_id VARCHAR(64) NOT NULL, target VARCHAR(255) NOT NULL, wave BIGINT NOT NULL,
    state VARCHAR(32) NOT NULL, token BIGINT, error TEXT, goal TEXT, version_before VARCHAR(40),
    version_after VARCHAR(40), updated_at VARCHAR(40) NOT NULL, PRIMARY KEY (plan_id, target));

INSERT INTO steps_v2 (plan_id, target, wave, state, token, error, goal, version_before, version_after, updated_at)
    SELECT plan_id, target, wave, state, token, error, goal, CAST(version_before AS VARCHAR(40)),
        CAST(version_after AS VARCHAR(40)), updated_at FROM steps;

DROP TABLE steps;

ALTER TABLE steps_v2 RENAME TO steps;

CREATE INDEX steps_by_state ON steps (plan_id, state, wave, target);
