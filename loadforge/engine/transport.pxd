# Declarations of the transport seam (engine/transport.pxi): how bytes reach the target.

from libc.stdint cimport uint64_t

from loadforge._openssl cimport SSL_CTX, SSL_SESSION
from loadforge._system cimport sockaddr_storage, socklen_t


cdef enum TransportKind:
    T_TCP                # plain TCP (engine/tcp.pxi)
    T_TLS                # TLS over TCP, OpenSSL with memory BIOs (engine/tls.pxi)


cdef enum IOStatus:
    # What every transport call answers (wrk's `status` in net.h). The errno behind an
    # IO_ERROR, for classifying it (connect, reset, ...), is in Conn.err.
    IO_OK                # done: connected, or bytes moved (a count of 0 from a read: the end)
    IO_ERROR             # failed for good: Conn.err says why
    IO_RETRY             # would block: call again once epoll says the socket is ready


cdef struct Transport:
    int kind             # TransportKind
    int family           # AF_INET or AF_INET6
    sockaddr_storage addr
    socklen_t addrlen
    int rx_stamps        # SO_TIMESTAMPNS works: responses are timed by the kernel
    # TLS: one context per worker; the latest session ticket when resumption is on
    SSL_CTX* ctx
    SSL_SESSION* session
    int resumption
    char server_name[256]   # SNI, empty for an address
    uint64_t tls_full    # handshakes completed, so far: full ones ...
    uint64_t tls_resumed  # ... and those that resumed a session
    uint64_t tls_failed  # handshakes that failed (certificate rejected, alert, reset, timeout)
    # What the worker's first completed handshake negotiated (tls_note_negotiated), for the
    # summary when no preflight did: NUL-terminated, empty until then (alpn: also when none).
    int negotiated
    char tls_protocol[16]
    char tls_cipher[64]
    char tls_alpn[32]
    # The latest connect that failed, for the preflight (engine/probe.pxi): its errno (0: it
    # timed out), and of a failed TLS handshake the certificate verification result
    # (X509_V_OK: not a verification failure) and OpenSSL's reason, NUL-terminated.
    int fail_errno
    long fail_verify
    char fail_reason[128]
