DROP INDEX IF EXISTS orders_customer_id;
DROP TABLE IF EXISTS orders;
