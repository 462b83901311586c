-- Undoes nothing: 0003_scope_dot_segments.up.sql removed role assignments at scopes with
-- `.` or `..` segments, which no version accepts any more; their audit rows keep what
-- was removed. The schema itself did not change.
SELECT 1;
