ALTER TABLE customers ADD COLUMN notes TEXT;
UPDATE customers c SET notes = b.notes FROM customers_notes_backup b WHERE b.id = c.id;
DROP TABLE customers_notes_backup;
