"""Gatehouse's open-loop load harness: `python -m bench <scenario> [options]`.

See bench/README.md. Modules, one concept each:

    dataset          the bench database and Redis prefix: create, seed (skewed), drop;
                     the pre-encoded requests the generators send
    targets          the servers under test: Gatehouse and the empty-handler baseline
    baseline_server  the empty-handler grpc.aio server (same services, constant answers)
    h2load           the fixed-rate h2load driver and its per-request log
    pygen            the multi-process Python open-loop generator (distinct requests)
    stats            percentiles and the summary of one measured point
    scenarios        what each scenario sends, at which rates, against which targets
    report           JSON, markdown table and PNG plot in bench/results/
"""
