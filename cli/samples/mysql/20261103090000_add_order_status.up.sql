-- Why: fulfilment tracks each order's status. Nullable first, backfill, then NOT NULL.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS status VARCHAR(16) NULL;
UPDATE orders SET status = 'paid' WHERE status IS NULL;
ALTER TABLE orders MODIFY status VARCHAR(16) NOT NULL;
