-- Why: the shop needs customer accounts before it can take orders.
CREATE TABLE IF NOT EXISTS customers (
    id BIGINT PRIMARY KEY,
    email VARCHAR(255) NOT NULL UNIQUE,
    notes TEXT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB;
INSERT INTO customers (id, email, notes) VALUES
    (1, 'ada@example.com', 'prefers email'),
    (2, 'grace@example.com', NULL),
    (3, 'linus@example.com', 'VIP');
