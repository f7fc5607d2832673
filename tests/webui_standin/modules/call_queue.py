"""Stand-in of modules.call_queue: the one generation queue lock (a FIFOLock in the WebUI: not
re-entrant). The WebUI's API holds it around txt2img/img2img/options, its UI around every job."""
import threading

queue_lock = threading.Lock()
