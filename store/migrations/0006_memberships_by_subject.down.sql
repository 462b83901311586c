-- Undoes 0006_memberships_by_subject.up.sql.
DROP INDEX memberships_by_subject;
