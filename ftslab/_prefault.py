import ctypes, queue, threading
_q = queue.Queue()
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
def _run():
    while True:
        arr, lo, hi = _q.get()
        addr = arr.ctypes.data
        a = (addr + lo * arr.itemsize + 4095) & ~4095
        b = (addr + hi * arr.itemsize) & ~4095
        if b > a:
            _libc.madvise(a, b - a, 23)
        del arr
_t = threading.Thread(target=_run, daemon=True); _t.start()
def ahead(arr, lo, hi):
    _q.put((arr, lo, hi))
