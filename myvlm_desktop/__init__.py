"""MyVLM Desktop: the Qt front end. Thin views over the Qt-free `engine`; slow work runs on worker threads.

Modules:
    app          `main()`: the `myvlm-desktop` entry point (QApplication, options, icon, style).
    main_window  `MainWindow`: folders, the photo grid, indexing progress and problems.
    indexing     `IndexRunner`: scan + pipeline on a QThread, with its own engine `Library`.
    thumbnails   `ThumbnailLoader`: cached thumbnails read off the GUI thread, LRU pixmap cache.
    grid         photo grid model, delegate and view.
    folders      watched-folder model and delegate.
    problems     the Problems dock.
    resources    icons and stylesheet, found next to the package.
    qt_compat    work-arounds for bugs of the Qt bindings.
"""

from engine import __version__

__all__ = ["__version__"]
