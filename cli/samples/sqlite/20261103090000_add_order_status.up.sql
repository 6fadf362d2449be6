-- Why: fulfilment tracks each order's status. Added nullable, then backfilled, so old writers keep working.
ALTER TABLE orders ADD COLUMN status TEXT;
UPDATE orders SET status = 'paid' WHERE status IS NULL;
