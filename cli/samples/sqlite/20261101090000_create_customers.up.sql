-- Why: the shop needs customer accounts before it can take orders.
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    notes TEXT,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO customers (id, email, notes) VALUES
    (1, 'ada@example.com', 'prefers email'),
    (2, 'grace@example.com', NULL),
    (3, 'linus@example.com', 'VIP');
