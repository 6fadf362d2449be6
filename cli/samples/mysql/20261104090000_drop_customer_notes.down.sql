ALTER TABLE customers ADD COLUMN notes TEXT NULL;
UPDATE customers c JOIN customers_notes_backup b ON b.id = c.id SET c.notes = b.notes;
DROP TABLE customers_notes_backup;
