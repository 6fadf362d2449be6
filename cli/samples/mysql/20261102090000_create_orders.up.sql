-- Why: orders reference customers; the index serves "orders of a customer" lookups.
CREATE TABLE IF NOT EXISTS orders (
    id BIGINT PRIMARY KEY,
    customer_id BIGINT NOT NULL,
    total_cents BIGINT NOT NULL CHECK (total_cents >= 0),
    CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE=InnoDB;
CREATE INDEX IF NOT EXISTS orders_total ON orders (total_cents);
INSERT INTO orders (id, customer_id, total_cents) VALUES (1, 1, 1250), (2, 1, 990), (3, 3, 45000);
