-- Why: free-text notes move to the CRM. Destructive: keep a backup so the DOWN can restore every note.
CREATE TABLE IF NOT EXISTS customers_notes_backup AS SELECT id, notes FROM customers;
ALTER TABLE customers DROP COLUMN notes;
