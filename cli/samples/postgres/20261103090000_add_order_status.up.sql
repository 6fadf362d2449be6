-- Why: fulfilment tracks each order's status. Nullable first, backfill, then NOT NULL.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS status TEXT;
UPDATE orders SET status = 'paid' WHERE status IS NULL;
ALTER TABLE orders ALTER COLUMN status SET NOT NULL;
