# Declarations of the transport seam (engine/transport.pxi): how bytes reach the target.

from loadforge._system cimport sockaddr_storage, socklen_t


cdef enum TransportKind:
    T_TCP                # plain TCP (engine/tcp.pxi); TLS goes beside it


cdef struct Transport:
    int kind             # TransportKind
    int family           # AF_INET or AF_INET6
    sockaddr_storage addr
    socklen_t addrlen
    int rx_stamps        # SO_TIMESTAMPNS works: responses are timed by the kernel
