ALTER TABLE customers ADD COLUMN notes TEXT;
UPDATE customers SET notes = (SELECT b.notes FROM customers_notes_backup b WHERE b.id = customers.id);
DROP TABLE customers_notes_backup;
