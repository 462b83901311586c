"""The pure core of Gatehouse: request validation, permission patterns, scope paths,
the CheckAccess decision and the tenant lifecycle table. No I/O lives here."""
