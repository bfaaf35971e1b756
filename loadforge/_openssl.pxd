# cython: language_level=3
# C declarations of libssl/libcrypto (OpenSSL 3) for the TLS transport (engine/tls.pxi). The
# extension links the system's libssl.so.3, the one Python's own `ssl` module loads: one copy
# of OpenSSL per process. Several names below are macros in the headers; Cython calls them as
# written, so each is declared with the argument types the macro takes.

cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct SSL_SESSION:
        pass
    ctypedef struct SSL_CIPHER:
        pass
    ctypedef struct BIO:
        pass
    ctypedef struct BIO_METHOD:
        pass
    ctypedef struct X509_VERIFY_PARAM:
        pass

    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_FILETYPE_PEM
        SSL_SESS_CACHE_CLIENT
        SSL_SESS_CACHE_NO_INTERNAL_STORE
        SSL_MODE_RELEASE_BUFFERS
        SSL_SENT_SHUTDOWN
        SSL_KEY_UPDATE_NONE
        SSL_KEY_UPDATE_NOT_REQUESTED
        TLS1_2_VERSION
        TLS1_3_VERSION
        X509_V_OK

    const SSL_METHOD* TLS_client_method()
    SSL_CTX* SSL_CTX_new(const SSL_METHOD* method)
    void SSL_CTX_free(SSL_CTX* ctx)
    void SSL_CTX_set_verify(SSL_CTX* ctx, int mode, void* callback)
    int SSL_CTX_load_verify_locations(SSL_CTX* ctx, const char* CAfile, const char* CApath)
    int SSL_CTX_set_default_verify_paths(SSL_CTX* ctx)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX* ctx, const char* file)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX* ctx, const char* file, int type)
    void SSL_CTX_set_default_passwd_cb_userdata(SSL_CTX* ctx, void* u)
    int SSL_CTX_check_private_key(const SSL_CTX* ctx)
    long SSL_CTX_set_min_proto_version(SSL_CTX* ctx, int version)
    long SSL_CTX_set_max_proto_version(SSL_CTX* ctx, int version)
    int SSL_CTX_set_alpn_protos(SSL_CTX* ctx, const unsigned char* protos, unsigned int len)
    void SSL_get0_alpn_selected(const SSL* ssl, const unsigned char** data, unsigned int* len)
    const char* SSL_get_version(const SSL* ssl)
    const SSL_CIPHER* SSL_get_current_cipher(const SSL* ssl)
    const char* SSL_CIPHER_get_name(const SSL_CIPHER* cipher)
    long SSL_CTX_set_session_cache_mode(SSL_CTX* ctx, long mode)
    void SSL_CTX_sess_set_new_cb(SSL_CTX* ctx, int (*cb)(SSL*, SSL_SESSION*) noexcept nogil)
    int SSL_CTX_set_app_data(SSL_CTX* ctx, void* arg)
    void* SSL_CTX_get_app_data(const SSL_CTX* ctx)
    long SSL_CTX_set_mode(SSL_CTX* ctx, long mode)
    X509_VERIFY_PARAM* SSL_CTX_get0_param(SSL_CTX* ctx)
    int X509_VERIFY_PARAM_set1_host(X509_VERIFY_PARAM* param, const char* name, size_t namelen)
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM* param, const char* ipasc)

    SSL* SSL_new(SSL_CTX* ctx)
    void SSL_free(SSL* ssl)
    SSL_CTX* SSL_get_SSL_CTX(const SSL* ssl)
    void SSL_set_bio(SSL* ssl, BIO* rbio, BIO* wbio)
    BIO* SSL_get_rbio(const SSL* ssl)
    BIO* SSL_get_wbio(const SSL* ssl)
    void SSL_set_connect_state(SSL* ssl)
    long SSL_set_tlsext_host_name(SSL* ssl, const char* name)
    int SSL_set_session(SSL* ssl, SSL_SESSION* session)
    int SSL_session_reused(const SSL* ssl)
    void SSL_set_shutdown(SSL* ssl, int mode)
    int SSL_shutdown(SSL* ssl)
    void SSL_SESSION_free(SSL_SESSION* session)
    int SSL_do_handshake(SSL* ssl)
    int SSL_read(SSL* ssl, void* buf, int num)
    int SSL_write(SSL* ssl, const void* buf, int num)
    int SSL_pending(const SSL* ssl)
    int SSL_has_pending(const SSL* ssl)
    int SSL_key_update(SSL* ssl, int updatetype)
    int SSL_get_key_update_type(const SSL* ssl)
    int SSL_get_error(const SSL* ssl, int ret)
    long SSL_get_verify_result(const SSL* ssl)
    const char* X509_verify_cert_error_string(long n)

    const BIO_METHOD* BIO_s_mem()
    BIO* BIO_new(const BIO_METHOD* type)
    int BIO_write(BIO* b, const void* data, int dlen)
    int BIO_read(BIO* b, void* data, int dlen)
    long BIO_get_mem_data(BIO* b, char** pp)
    size_t BIO_ctrl_pending(BIO* b)
    void BIO_set_mem_eof_return(BIO* b, int v)


cdef extern from "openssl/err.h" nogil:
    unsigned long ERR_get_error()
    unsigned long ERR_peek_last_error()
    const char* ERR_reason_error_string(unsigned long e)
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char* buf, size_t len)
