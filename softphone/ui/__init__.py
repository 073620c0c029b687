"""The PySide6 user interface: the only package that imports Qt.

``bridge`` turns service events into Qt signals, ``async_slot`` runs
coroutines from Qt signals on the qasync loop, ``widgets/`` holds dumb
reusable widgets and ``views/`` the windows of each role.
"""
