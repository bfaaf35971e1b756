# Included by loadforge/_core.pyx: what the preflight (loadforge/run/preflight.py) reads from an
# Engine that ran its one request, beyond the outcome its interval payload holds. Read once,
# after the run: nothing here is on the per-request path.

PROBE_SNIFF_BYTES = 4096


def engine_probe(Engine engine):
    """The preflight's diagnosis of a finished one-request run: {"status": the response's
    HTTP status (0: none), "received": bytes of the response came (a timeout that had some is
    a trickle), "errno": the latest failed connect's errno (0: none, or it timed out),
    "verify": the failed handshake's certificate verification result (0: X509_V_OK),
    "verify_message": OpenSSL's words for it, "reason": OpenSSL's reason for the failed
    handshake ("" when none), "tail": the first bytes of the receive buffer as the last read
    left them (plaintext over TLS; an error page such as nginx's for a client certificate)}."""
    cdef int i, status = engine.probe_status
    cdef int64_t received = 0
    cdef Transport* t = &engine.transport
    for i in range(engine.nconns):
        if engine.conns[i].parser.status and not status:
            status = engine.conns[i].parser.status      # HTTP/1.1 (also h2 engines' h1 conns)
        received += engine.conns[i].parser.received
    return {"status": status, "received": received, "errno": t.fail_errno,
            "verify": t.fail_verify,
            "verify_message": X509_verify_cert_error_string(t.fail_verify).decode(
                "latin-1") if t.fail_verify else "",
            "reason": t.fail_reason.decode("latin-1"),
            "tail": engine.rbuf[:PROBE_SNIFF_BYTES] if engine.rbuf != NULL else b""}
