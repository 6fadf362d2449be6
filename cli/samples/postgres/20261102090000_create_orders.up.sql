-- Why: orders reference customers; the index serves "orders of a customer" lookups.
CREATE TABLE IF NOT EXISTS orders (
    id BIGINT PRIMARY KEY,
    customer_id BIGINT NOT NULL REFERENCES customers (id),
    total_cents BIGINT NOT NULL CHECK (total_cents >= 0)
);
CREATE INDEX IF NOT EXISTS orders_customer_id ON orders (customer_id);
INSERT INTO orders (id, customer_id, total_cents) VALUES (1, 1, 1250), (2, 1, 990), (3, 3, 45000);
