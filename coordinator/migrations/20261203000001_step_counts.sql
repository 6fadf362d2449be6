-- How many of each plan's steps are in each wave and state, kept in the transaction that moves steps (the store's
-- `counts` module) instead of counted over all of a plan's steps on every scheduling pass: a pass reads a few rows
-- whatever the plan's size. Counted once here from the steps a store already holds.
CREATE TABLE step_counts (plan_id VARCHAR(64) NOT NULL, wave BIGINT NOT NULL, state VARCHAR(32) NOT NULL,
    n BIGINT NOT NULL, PRIMARY KEY (plan_id, wave, state));

INSERT INTO step_counts (plan_id, wave, state, n)
    SELECT plan_id, wave, state, COUNT(*) FROM steps GROUP BY plan_id, wave, state;
