# Included by loadforge/_core.pyx: TLS behind the transport seam (engine/transport.pxi), on
# OpenSSL with memory BIOs. Ciphertext comes in through the engine's own recvmsg, so responses
# keep the kernel's receive timestamps (SO_TIMESTAMPNS) exactly as over plain TCP, and goes out
# through send(). A read decrypts everything the SSL can before it returns: no plaintext stays
# inside OpenSSL where epoll cannot see it (the open model's quiet sleep trusts epoll), and
# tls_pending reports what a full buffer left behind.
#
# The handshake runs while the connection is still C_CONNECTING (Conn.handshaking), so the
# pool, timeouts and the quiet sleep treat it as a connect that has not finished; the request
# that waited for it is sent once it ends, and its latency includes it.


cdef int tls_new_session(SSL* ssl, SSL_SESSION* session) noexcept nogil:
    """OpenSSL's new-session callback: keep the latest ticket for the next connection. TLS 1.3
    tickets arrive after the handshake, so SSL_get1_session at its end would be too early."""
    cdef Transport* t = <Transport*>SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl))
    if t == NULL or not t.resumption:
        return 0
    if t.session != NULL:
        SSL_SESSION_free(t.session)
    t.session = session
    return 1        # the reference is ours now


cdef inline int tls_flush(Conn* c) noexcept nogil:
    """Send the ciphertext waiting in the write BIO: 0 when all went out, 1 when some is left
    (the socket buffer is full), -1 when send failed (its errno in Conn.err)."""
    cdef BIO* wbio = SSL_get_wbio(c.ssl)
    cdef char* data
    cdef char discard[16384]
    cdef long pending = BIO_get_mem_data(wbio, &data)
    cdef ssize_t n, left
    cdef int chunk
    if pending <= 0:
        return 0
    n = send(c.fd, data, pending, MSG_NOSIGNAL)
    if n < 0:
        if errno == EAGAIN or errno == EINTR:
            return 1
        c.err = errno
        return -1
    # Drop what went out and keep the rest for the next EPOLLOUT. Read out, not BIO_reset:
    # a reset zeroes the BIO's whole buffer, as large as the largest request ever sent, on
    # every request after it.
    left = n
    while left > 0:
        chunk = <int>(left if left < <ssize_t>sizeof(discard) else sizeof(discard))
        BIO_read(wbio, discard, chunk)
        left -= chunk
    return 0 if n == pending else 1


cdef inline int tls_flush_status(Conn* c) noexcept nogil:
    """tls_flush as a transport status (transport_flush)."""
    cdef int f = tls_flush(c)
    return IO_OK if f == 0 else (IO_RETRY if f > 0 else IO_ERROR)


cdef inline int tls_unsent(Conn* c) noexcept nogil:
    """Ciphertext the socket has not taken yet."""
    return c.ssl != NULL and BIO_ctrl_pending(SSL_get_wbio(c.ssl)) > 0


cdef void tls_copy_name(char* dst, size_t size, const char* src, ssize_t length) noexcept nogil:
    """src into dst, NUL-terminated and cut to fit; length -1: src is NUL-terminated."""
    cdef size_t i = 0
    if src != NULL:
        while i < size - 1 and (<ssize_t>i < length if length >= 0 else src[i] != 0):
            dst[i] = src[i]
            i += 1
    dst[i] = 0


cdef void tls_note_negotiated(Transport* t, Conn* c) noexcept nogil:
    """Keep what the worker's first completed handshake negotiated (protocol, cipher, ALPN),
    so a run without the preflight still reports them (Engine.tls_negotiated)."""
    cdef const char* name = SSL_get_version(c.ssl)
    cdef const SSL_CIPHER* cipher = SSL_get_current_cipher(c.ssl)
    cdef const unsigned char* alpn = NULL
    cdef unsigned int alpn_len = 0
    tls_copy_name(t.tls_protocol, sizeof(t.tls_protocol), name, -1)
    name = SSL_CIPHER_get_name(cipher) if cipher != NULL else NULL
    tls_copy_name(t.tls_cipher, sizeof(t.tls_cipher), name, -1)
    SSL_get0_alpn_selected(c.ssl, &alpn, &alpn_len)
    tls_copy_name(t.tls_alpn, sizeof(t.tls_alpn), <const char*>alpn, alpn_len)
    t.negotiated = 1


cdef void tls_note_failure(Transport* t, Conn* c, int err) noexcept nogil:
    """Keep why this handshake failed (errno, verification result, OpenSSL's reason), for the
    preflight's one-line diagnosis (engine/probe.pxi). Called on failures only."""
    cdef unsigned long e = ERR_peek_last_error()
    cdef const char* reason = ERR_reason_error_string(e) if e != 0 else NULL
    t.fail_errno = err
    t.fail_verify = SSL_get_verify_result(c.ssl)
    tls_copy_name(t.fail_reason, sizeof(t.fail_reason), reason, -1)


cdef inline int tls_connect(Transport* t, Conn* c) noexcept nogil:
    cdef BIO* rbio
    cdef BIO* wbio
    if tcp_connect(t, c) != IO_OK:
        return IO_ERROR
    c.ssl = SSL_new(t.ctx)
    rbio = BIO_new(BIO_s_mem())
    wbio = BIO_new(BIO_s_mem())
    if c.ssl == NULL or rbio == NULL or wbio == NULL:
        if c.ssl != NULL:
            SSL_free(c.ssl)
            c.ssl = NULL
        close(c.fd)
        c.fd = -1
        c.err = ENOMEM
        return IO_ERROR
    BIO_set_mem_eof_return(rbio, -1)    # an empty read BIO means "wait", not end of stream
    SSL_set_bio(c.ssl, rbio, wbio)
    SSL_set_connect_state(c.ssl)
    if t.server_name[0] != 0:
        SSL_set_tlsext_host_name(c.ssl, t.server_name)
    if t.resumption and t.session != NULL:
        SSL_set_session(c.ssl, t.session)
    c.handshaking = 0
    c.tls_resumed = 0
    c.tls_data = 0
    return IO_OK


cdef int tls_handshake(Transport* t, Conn* c) noexcept nogil:
    """Drive the handshake as far as the socket allows: IO_OK when it is done, IO_RETRY while
    it waits for the server (and, tls_unsent, to send: a full socket buffer), else IO_ERROR
    (Conn.err: EPROTO for a rejected certificate or an alert)."""
    cdef char buf[16384]
    cdef int r, e, f
    cdef ssize_t n
    while True:
        ERR_clear_error()
        r = SSL_do_handshake(c.ssl)
        f = tls_flush(c)
        if f < 0:
            t.tls_failed += 1
            tls_note_failure(t, c, c.err)
            return IO_ERROR
        if r == 1:
            c.handshaking = 0
            if not t.negotiated:
                tls_note_negotiated(t, c)
            if SSL_session_reused(c.ssl):
                t.tls_resumed += 1
                c.tls_resumed = 1
            else:
                t.tls_full += 1
            return IO_OK
        e = SSL_get_error(c.ssl, r)
        if e != SSL_ERROR_WANT_READ:
            t.tls_failed += 1
            c.err = EPROTO
            tls_note_failure(t, c, EPROTO)
            return IO_ERROR
        n = recv(c.fd, buf, sizeof(buf), 0)
        if n > 0:
            BIO_write(SSL_get_rbio(c.ssl), buf, <int>n)
            continue
        if n == 0:
            t.tls_failed += 1
            c.err = ECONNRESET
            tls_note_failure(t, c, ECONNRESET)
            return IO_ERROR
        if errno == EINTR:
            continue
        if errno == EAGAIN:
            return IO_RETRY
        t.tls_failed += 1
        c.err = errno
        tls_note_failure(t, c, c.err)
        return IO_ERROR


cdef inline int tls_connected(Transport* t, Conn* c) noexcept nogil:
    """The TCP connect ended, or (handshaking) the socket has handshake bytes: IO_OK when the
    connection is ready, IO_RETRY while the handshake waits, else IO_ERROR. When TCP is up
    the handshake begins (Conn.handshaking) and the answer is IO_RETRY: the caller times the
    connect, then calls again to start the handshake."""
    if not c.handshaking:
        if tcp_connected(t, c) != IO_OK:
            return IO_ERROR
        c.handshaking = 1
        return IO_RETRY
    return tls_handshake(t, c)


cdef inline int tls_recv(Conn* c, msghdr* msg, ssize_t* r) noexcept nogil:
    """One recvmsg of ciphertext (tls_read's): IO_OK with r > 0, or r == 0 at the end of
    the stream; IO_RETRY (EAGAIN) or IO_ERROR (Conn.err)."""
    while True:
        r[0] = recvmsg(c.fd, msg, 0)
        if r[0] >= 0:
            return IO_OK
        if errno == EINTR:
            continue
        if errno == EAGAIN:
            return IO_RETRY
        c.err = errno
        return IO_ERROR


cdef int tls_read(Transport* t, Conn* c, msghdr* msg, ssize_t* n) noexcept nogil:
    """Plaintext into msg's buffer, up to its size: what the SSL already holds, else one
    recvmsg of ciphertext (its control data: the receive timestamp) decrypted. IO_OK with n
    bytes (0: the end of the stream), IO_RETRY (nothing more yet), or IO_ERROR (Conn.err;
    Conn.refused: the handshake was refused after all, see below). When no recvmsg ran, msg
    carries no control data: the bytes were held from an earlier read (of this connection or,
    the buffer being shared, another), whose timestamp is not theirs. What OpenSSL wrote
    while reading (a KeyUpdate or renegotiation answer, an alert) is sent at once: a client
    that writes only after the response would otherwise stall it."""
    cdef char* buf = <char*>msg.msg_iov.iov_base
    cdef int cap = <int>msg.msg_iov.iov_len
    cdef int got = 0, k, e, st
    cdef ssize_t r
    cdef BIO* rbio = SSL_get_rbio(c.ssl)
    n[0] = 0
    # Nothing inside OpenSSL (the usual case, a response per wake-up): straight to the socket,
    # sparing an SSL_read that could only say WANT_READ.
    if not SSL_has_pending(c.ssl) and BIO_ctrl_pending(rbio) == 0:
        st = tls_recv(c, msg, &r)
        if st != IO_OK or r == 0:
            return st
        BIO_write(rbio, buf, <int>r)
    else:
        msg.msg_controllen = 0
    while True:
        ERR_clear_error()
        k = SSL_read(c.ssl, buf + got, cap - got)
        if k > 0:
            got += k
            if got == cap or (BIO_ctrl_pending(rbio) == 0 and SSL_pending(c.ssl) == 0):
                break       # all that came is decrypted: no need to hear WANT_READ
            continue
        e = SSL_get_error(c.ssl, k)
        if e == SSL_ERROR_WANT_READ:
            if got:
                break
            # A TLS 1.3 KeyUpdate that asked for ours (update_requested): OpenSSL keeps the
            # answer for the next write, which an HTTP/1.1 client makes only after the
            # response; a server that waits for it would stall. Send it now (SSL_key_update(3):
            # SSL_do_handshake sends a pending update at once).
            if SSL_get_key_update_type(c.ssl) != SSL_KEY_UPDATE_NONE \
                    and SSL_key_update(c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED) == 1:
                SSL_do_handshake(c.ssl)
            # The buffer is free again: read ciphertext into it, then decrypt it in place
            # (BIO_write copied it into the read BIO).
            if BIO_ctrl_pending(SSL_get_wbio(c.ssl)) > 0 and tls_flush(c) < 0:
                return IO_ERROR
            msg.msg_controllen = sizeof(uint64_t) * CMSG_BUFFER_WORDS
            st = tls_recv(c, msg, &r)
            if st != IO_OK or r == 0:
                return st
            BIO_write(rbio, buf, <int>r)
            continue
        if got:
            break
        if e == SSL_ERROR_ZERO_RETURN:
            return IO_OK        # close_notify: the server ended the stream (n = 0)
        if e == SSL_ERROR_SSL and not c.tls_data:
            # An alert before any plaintext: a TLS 1.3 server that refused the client's
            # certificate (or any other part of the handshake) says so only now, after the
            # client finished its side. The handshake failed; it was counted as completed.
            tls_flush(c)
            if c.tls_resumed:
                t.tls_resumed -= 1
            else:
                t.tls_full -= 1
            t.tls_failed += 1
            tls_note_failure(t, c, ECONNABORTED)
            c.tls_data = 1
            # The caller ends its request as a failed connect (`connect`, connections.failed),
            # as a TLS 1.2 server's refusal during the handshake ends (pool.pxi connect_failed).
            c.err = EPROTO
            c.refused = 1
            return IO_ERROR
        # An alert, a bad record, or the socket's own error: the connection is reset.
        c.err = ECONNRESET if e == SSL_ERROR_SYSCALL else EPROTO
        return IO_ERROR
    c.tls_data = 1
    if BIO_ctrl_pending(SSL_get_wbio(c.ssl)) > 0 and tls_flush(c) < 0:
        return IO_ERROR
    n[0] = got
    return IO_OK


cdef int tls_write(Transport* t, Conn* c, const char* data, size_t length,
                   ssize_t* n) noexcept nogil:
    """Encrypt and send. Ciphertext of an earlier call that the socket did not take goes
    first; while some is left, nothing new is taken and the answer is IO_RETRY. The bytes
    of this call are taken whole (n = length) once encrypted: IO_RETRY when part of their
    ciphertext still waits, so the writer asks again on EPOLLOUT (with nothing left to
    give, which flushes)."""
    cdef int f, k
    n[0] = 0
    f = tls_flush(c)
    if f < 0:
        return IO_ERROR
    if f:
        return IO_RETRY
    if length == 0:
        return IO_OK
    ERR_clear_error()
    k = SSL_write(c.ssl, data, <int>length)
    if k <= 0:
        c.err = EPROTO
        return IO_ERROR
    n[0] = k
    f = tls_flush(c)
    if f < 0:
        return IO_ERROR
    return IO_RETRY if f else IO_OK


cdef inline int tls_pending(Transport* t, Conn* c) noexcept nogil:
    """Bytes inside OpenSSL that epoll cannot see: decrypted ones, or ciphertext not yet
    decrypted (a read that filled the buffer left them). A partial record counts too; the
    read that follows finds it incomplete and the socket empty (EAGAIN), and waits."""
    return SSL_pending(c.ssl) > 0 or BIO_ctrl_pending(SSL_get_rbio(c.ssl)) > 0


cdef inline int tls_alpn(Conn* c, const unsigned char** protocol,
                         unsigned int* length) noexcept nogil:
    """The protocol the server chose by ALPN once the handshake is done (length 0: none),
    for a protocol layer that offered more than one (HTTP/2's "h2" beside "http/1.1")."""
    SSL_get0_alpn_selected(c.ssl, protocol, length)
    return length[0]


cdef inline void tls_close(Transport* t, Conn* c) noexcept nogil:
    # close_notify, as wrk's ssl_close sends it: the server sees a clean end (RFC 8446 6.1),
    # not a truncation. One non-blocking send; whatever the socket does not take is dropped.
    if c.ssl != NULL:
        if not c.handshaking:
            # SSL_shutdown also marks the SSL as shut down; without that SSL_free takes the
            # connection for a broken one and makes its session (the ticket kept for
            # resumption) not resumable.
            ERR_clear_error()
            if SSL_shutdown(c.ssl) < 0:
                SSL_set_shutdown(c.ssl, SSL_SENT_SHUTDOWN)
            tls_flush(c)
        SSL_free(c.ssl)      # frees both BIOs
        c.ssl = NULL
    c.handshaking = 0
    tcp_close(t, c)


cdef str tls_error(str what):
    """OpenSSL's reason for the failure just seen, after `what`."""
    cdef char buf[256]
    cdef unsigned long e = ERR_get_error()
    if e == 0:
        return what
    ERR_error_string_n(e, buf, sizeof(buf))
    ERR_clear_error()
    return f"{what}: {buf.decode('latin-1')}"


cdef int tls_setup(Transport* t, dict tls) except -1:
    """The worker's SSL_CTX from a plan's TLS settings (the dict `loadforge.config.tls.TLS.
    engine_settings` builds): verification on unless insecure, CA file or the system store,
    client certificate, versions, ALPN, and session resumption through the new-session
    callback. Failures raise ValueError with OpenSSL's reason."""
    cdef SSL_CTX* ctx = SSL_CTX_new(TLS_client_method())
    cdef X509_VERIFY_PARAM* param
    cdef bytes b
    if ctx == NULL:
        raise MemoryError()
    t.ctx = ctx
    t.kind = T_TLS
    SSL_CTX_set_app_data(ctx, <void*>t)
    # No SSL_MODE_RELEASE_BUFFERS: it frees and reallocates the record buffers around every
    # request (two mallocs per request); 34 KiB per open connection is the price of none.
    if tls.get("min_version"):
        SSL_CTX_set_min_proto_version(ctx, <int>tls["min_version"])
    if tls.get("max_version"):
        SSL_CTX_set_max_proto_version(ctx, <int>tls["max_version"])
    if tls.get("insecure"):
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL)
    else:
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL)
        if tls.get("ca"):
            b = os.fsencode(tls["ca"])
            if SSL_CTX_load_verify_locations(ctx, b, NULL) != 1:
                raise ValueError(tls_error(f"tls ca {tls['ca']}"))
        elif SSL_CTX_set_default_verify_paths(ctx) != 1:
            raise ValueError(tls_error("the system trust store"))
        name = tls.get("verify_name") or ""
        if name:
            param = SSL_CTX_get0_param(ctx)
            b = name.encode("idna" if not tls.get("verify_ip") else "ascii")
            if tls.get("verify_ip"):
                if X509_VERIFY_PARAM_set1_ip_asc(param, b) != 1:
                    raise ValueError(f"tls: {name} is not an IP address")
            elif X509_VERIFY_PARAM_set1_host(param, b, len(b)) != 1:
                raise ValueError(f"tls: {name} is not a host name")
    if tls.get("cert"):
        # An encrypted key's passphrase (tls.key_password_env), else "": OpenSSL's default
        # password callback answers with the callback's userdata when there is one, and
        # prompts on the terminal only when there is none.
        password = (tls.get("key_password") or "").encode()
        SSL_CTX_set_default_passwd_cb_userdata(ctx, <void*><const char*>password)
        try:
            b = os.fsencode(tls["cert"])
            if SSL_CTX_use_certificate_chain_file(ctx, b) != 1:
                raise ValueError(tls_error(f"tls cert {tls['cert']}"))
            b = os.fsencode(tls.get("key") or tls["cert"])
            if SSL_CTX_use_PrivateKey_file(ctx, b, SSL_FILETYPE_PEM) != 1 \
                    or SSL_CTX_check_private_key(ctx) != 1:
                raise ValueError(tls_error(f"tls key {tls.get('key') or tls['cert']}"))
        finally:
            # An interned constant, alive as long as the module: no prompt later either.
            SSL_CTX_set_default_passwd_cb_userdata(ctx, <void*><const char*>b"")
    alpn = b"".join(bytes([len(p)]) + p.encode("ascii") for p in tls.get("alpn", ("http/1.1",)))
    if alpn and SSL_CTX_set_alpn_protos(ctx, alpn, len(alpn)) != 0:
        raise ValueError("tls: bad ALPN protocol list")
    sni = (tls.get("sni") or "").encode("idna")
    if len(sni) >= sizeof(t.server_name):
        raise ValueError("tls: server name too long")
    memcpy(t.server_name, <const char*>sni, len(sni))
    t.server_name[len(sni)] = 0
    t.resumption = 1 if tls.get("resumption", True) else 0
    if t.resumption:
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE)
        SSL_CTX_sess_set_new_cb(ctx, tls_new_session)
    return 0
