-- billing 0.6.0: the first grant in spending order, on the customer row.
--
-- A debit read the customer's live grants (an index scan and an aggregate over them,
-- about a fifth of its read) to take credits in the documented order, though almost
-- every debit takes them all from the first grant. The customer row already names the
-- grant a debit last drew from (draw_grant, 0.5.0); draw_left now keeps that grant's
-- remainder whenever it is known to be the first in spending order with credits left.
-- A debit or reserve it covers reads no grant at all. Any call that moves another
-- grant's credits, adds a grant, or empties this one clears it (NULL), and the next
-- spend reads the grants and sets it again. verify() checks it (sql/entry_ids.sql).
ALTER TABLE billing.customers ADD COLUMN draw_left bigint;
COMMENT ON COLUMN billing.customers.draw_left IS 'When set: draw_grant is the first grant in spending order with credits left, and this is its remainder (less the pending draw).';
