"""Map N one-page anonymous regions that cannot merge (alternating protections), then
exit: the kernel destroys the mm's maple tree at exit (exit_mmap -> __mt_destroy)."""
import ctypes, mmap, os, sys
n = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
pg = mmap.PAGESIZE
base = libc.mmap(None, pg * n, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
for i in range(0, n, 2):
    if libc.mprotect(base + i * pg, pg, mmap.PROT_READ | mmap.PROT_WRITE):
        raise OSError(ctypes.get_errno(), "mprotect")
print(open("/proc/self/maps").read().count("\n"), "mappings")
