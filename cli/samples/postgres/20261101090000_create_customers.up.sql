-- Why: the shop needs customer accounts before it can take orders.
CREATE TABLE IF NOT EXISTS customers (
    id BIGINT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    notes TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO customers (id, email, notes) VALUES
    (1, 'ada@example.com', 'prefers email'),
    (2, 'grace@example.com', NULL),
    (3, 'linus@example.com', 'VIP');
