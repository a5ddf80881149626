"""MyVLM Desktop: the Qt front end. Thin views over the Qt-free `engine`; slow work runs on worker threads.

Modules:
    app              `main()`: the `myvlm-desktop` entry point (first run, one instance per library, theme).
    main_window      `MainWindow`: a shell of views (sidebar, grid and pages, detail pane, status bar).
    state            `AppState`: the window's Qt-free state (view, selection, search, busy, indexing), with events.
    actions          every window action declared once (text, shortcut, icon, what it calls, when enabled); menus.
    window/          what the window does: layout, catalog_follow (refresh by the engine's change feed),
                     people_actions, thing_actions, photo_actions, search_flow, indexing_flow, full_view,
                     stages_popup, prompts, session.
    indexing         `IndexRunner`: scan + pipeline in the worker process `index_worker` (JSON lines).
    index_worker     the worker process (no Qt): runs the engine, reports progress, obeys pause/cancel.
    tasks            `EngineThread`: engine calls on a thread with its own `Library`; errors in words.
    sidebar          Library / People / Things / Searches.
    grid             photo grid model (month starts, search "why"), delegate, view and date scrubber.
    detail           the detail pane: preview with named face boxes, captions, questions and answers.
    people_page      unnamed groups ("Who is this?", "Is this X?"), people, a person's header.
    things_page      things, suggestions, "Name this thing…", a thing's header with precision/recall.
    training         "Teach the captioner": targets review, training on a QThread, loss plot.
    search           search as you type on a search thread, latest query wins.
    settings_dialog  folders, library, device, models present/missing, thresholds, appearance.
    viewer           full view (Space).
    first_run        the first start's folder question.
    single_instance  QLocalServer/QLocalSocket: one app per library.
    theme            light and dark palettes.
    thumbnails       `ThumbnailLoader` / `FaceCropLoader`: images read off the GUI thread, LRU pixmap cache.
    folders          watched-folder model and delegate.
    problems         the Problems dock.
    widgets          flow layout, chips, error dialogs.
    resources        icons and stylesheet, found next to the package.
    qt_compat        work-arounds for bugs of the Qt bindings.
"""

from engine import __version__

__all__ = ["__version__"]
