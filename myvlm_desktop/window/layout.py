"""The main window's widgets, made once: sidebar | grid with its headers, the People and Things pages or the full
view | info pane; the toolbar (folders, indexing, search, size) and the status bar (summary, problems, busy,
training, stage, progress, pause, stop). Each widget becomes an attribute of the window; signals go to the window
or to the controller that handles them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, QStringListModel, Qt
from PySide6.QtWidgets import (
    QCompleter,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSplitter,
    QStackedWidget,
    QStyle,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from myvlm_desktop.detail import DetailPane
from myvlm_desktop.grid import DEFAULT_THUMB_PX, MAX_THUMB_PX, MIN_THUMB_PX, DateScrubber, PhotoGridView
from myvlm_desktop.people_page import PeoplePage, PersonHeader
from myvlm_desktop.problems import ProblemsDock
from myvlm_desktop.resources import app_icon, themed_icon
from myvlm_desktop.sidebar import CONCEPT, PERSON, Sidebar
from myvlm_desktop.things_page import ConceptHeader, ThingsPage
from myvlm_desktop.viewer import FullView
from myvlm_desktop.widgets import ChipBar

from .stages_popup import StagesPopup

if TYPE_CHECKING:
    from myvlm_desktop.main_window import MainWindow


def build_ui(w: MainWindow) -> None:
    """Make the window's widgets (sidebar | grid, pages or full view | info pane; toolbar; status bar) as its
    attributes and connect them to the window and its controllers."""
    w.sidebar = Sidebar(w.folder_model, w.face_loader)
    w.sidebar.navigated.connect(w.navigate)
    w.sidebar.personDropped.connect(w.people.merge_people)
    w.folder_view = w.sidebar.folder_view

    # the grid page: a header (person, thing, search), the grid with its date scrubber, or an empty state
    w.grid_view = PhotoGridView()
    w.grid_view.setModel(w.grid_model)
    w.grid_view.zoomRequested.connect(w.zoom_step)
    w.grid_view.doubleClicked.connect(lambda _i: w.full.open())
    w.grid_view.selectionModel().selectionChanged.connect(lambda *_: w.on_selection())
    w.grid_view.selectionModel().currentChanged.connect(lambda *_: w.on_selection())
    w.grid_view.installEventFilter(w)
    w.grid_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
    w.grid_view.customContextMenuRequested.connect(w.grid_menu)
    w.scrubber = DateScrubber(w.grid_view)
    w.grid_empty = QLabel()
    w.grid_empty.setObjectName("gridEmpty")
    w.grid_empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
    w.grid_empty.setWordWrap(True)
    w.grid_empty.setTextFormat(Qt.TextFormat.RichText)
    grid_row = QWidget()
    gl = QHBoxLayout(grid_row)
    gl.setContentsMargins(0, 0, 0, 0)
    gl.setSpacing(0)
    gl.addWidget(w.grid_view, 1)
    gl.addWidget(w.scrubber)
    w.grid_stack = QStackedWidget()
    w.grid_stack.addWidget(grid_row)
    w.grid_stack.addWidget(w.grid_empty)
    w.person_header = PersonHeader(w.face_loader)
    w.person_header.renameRequested.connect(w.people.rename_person)
    w.person_header.teachRequested.connect(lambda pid: w.things.teach(person_id=pid))
    w.person_header.hideRequested.connect(w.people.hide_person)
    w.person_header.forgetRequested.connect(w.people.forget_person)
    w.person_header.rejectFaces.connect(w.people.reject_faces)
    w.person_header.moveFaces.connect(w.people.move_faces)
    w.person_header.nameRequested.connect(w.people.name_group)
    w.concept_header = ConceptHeader()
    w.concept_header.teachRequested.connect(lambda cid: w.things.teach(concept_id=cid))
    w.concept_header.retrainRequested.connect(w.things.retrain_concept)
    w.concept_header.renameRequested.connect(w.things.rename_concept)
    w.concept_header.removeRequested.connect(w.things.remove_concept)
    w.search_header = QWidget()
    w.search_header.setObjectName("searchHeader")
    sh = QVBoxLayout(w.search_header)
    sh.setContentsMargins(14, 8, 14, 6)
    w.search_title = QLabel()
    w.search_title.setObjectName("pageSummary")
    w.search_title.setWordWrap(True)
    w.search_chips = ChipBar()
    w.search_chips.activated.connect(w.search_flow.on_chip)
    w.search_notes = QLabel()
    w.search_notes.setObjectName("searchNotes")
    w.search_notes.setWordWrap(True)
    sh.addWidget(w.search_chips)
    sh.addWidget(w.search_title)
    sh.addWidget(w.search_notes)
    w.grid_page = QWidget()
    w.grid_page.setObjectName("gridPage")
    gp = QVBoxLayout(w.grid_page)
    gp.setContentsMargins(0, 0, 0, 0)
    gp.setSpacing(0)
    for header in (w.person_header, w.concept_header, w.search_header):
        gp.addWidget(header)
        header.hide()
    gp.addWidget(w.grid_stack, 1)

    w.people_page = PeoplePage(w.face_loader)
    w.people_page.nameRequested.connect(w.people.name_group)
    w.people_page.rejectRequested.connect(w.people.reject_suggestion)
    w.people_page.hideRequested.connect(lambda gid: w.people.hide_person(gid, True))
    w.people_page.hideSmallRequested.connect(w.people.hide_small_groups)
    w.people_page.mergeRequested.connect(w.people.merge_people)
    w.people_page.openRequested.connect(lambda pid: w.navigate(PERSON, pid))
    w.people_page.showHiddenChanged.connect(lambda _on: w.people.load_page())
    w.person_header.set_completer(w.people_page.names_model)
    w.things_page = ThingsPage(w.loader)
    w.things_page.openRequested.connect(lambda cid: w.navigate(CONCEPT, cid))
    w.things_page.nameRequested.connect(w.things.name_thing)
    w.things_page.nameSuggestion.connect(w.things.name_thing)
    w.things_page.showSuggestion.connect(w.show_photo_ids)
    w.full_view = FullView(w.library.paths)
    w.full_view.closeRequested.connect(w.full.close)
    w.full_view.stepRequested.connect(w.full.step)

    w.empty_page = make_empty_page(w)
    w.center = QStackedWidget()
    w.center.setObjectName("center")
    for page in (w.empty_page, w.grid_page, w.people_page, w.things_page, w.full_view):
        w.center.addWidget(page)

    w.detail = DetailPane(w.photo_actions, w.library.paths)
    splitter = QSplitter(Qt.Orientation.Horizontal)
    splitter.setObjectName("mainSplitter")
    splitter.addWidget(w.sidebar)
    splitter.addWidget(w.center)
    splitter.addWidget(w.detail)
    splitter.setStretchFactor(0, 0)
    splitter.setStretchFactor(1, 1)
    splitter.setStretchFactor(2, 0)
    splitter.setSizes([230, 730, 320])
    splitter.setCollapsible(1, False)
    w.setCentralWidget(splitter)
    w.splitter = splitter

    # toolbar: folders, indexing | search | size
    tb = QToolBar("Main")
    tb.setObjectName("mainToolBar")
    tb.setMovable(False)
    tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    tb.setIconSize(QSize(18, 18))
    tb.addAction(w.add_folder_action)
    tb.addAction(w.index_action)
    spacer = QWidget()
    spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    tb.addWidget(spacer)
    w.search_edit = QLineEdit()
    w.search_edit.setObjectName("searchEdit")
    w.search_edit.setPlaceholderText("Search: names, things, words, places, 2019…  (Ctrl+F)")
    w.search_edit.setClearButtonEnabled(True)
    w.search_edit.setMinimumWidth(300)
    w.search_edit.setMaximumWidth(460)
    w.search_edit.textChanged.connect(w.search_flow.on_text)
    w.search_edit.returnPressed.connect(w.search_flow.on_enter)
    w.search_edit.installEventFilter(w)
    w.search_names = QStringListModel(w)
    completer = QCompleter(w.search_names, w.search_edit)
    completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
    completer.setFilterMode(Qt.MatchFlag.MatchStartsWith)
    completer.setCompletionMode(QCompleter.CompletionMode.InlineCompletion)
    w.search_edit.setCompleter(completer)
    tb.addWidget(w.search_edit)
    spacer2 = QWidget()
    spacer2.setFixedWidth(16)
    tb.addWidget(spacer2)
    w.zoom_slider = QSlider(Qt.Orientation.Horizontal)
    w.zoom_slider.setObjectName("zoomSlider")
    w.zoom_slider.setRange(MIN_THUMB_PX, MAX_THUMB_PX)
    w.zoom_slider.setSingleStep(16)
    w.zoom_slider.setPageStep(32)
    w.zoom_slider.setValue(DEFAULT_THUMB_PX)
    w.zoom_slider.setFixedWidth(120)
    w.zoom_slider.setToolTip("Thumbnail size (Ctrl + mouse wheel)")
    w.zoom_slider.valueChanged.connect(w.set_thumb_size)
    tb.addWidget(QLabel("Size "))
    tb.addWidget(w.zoom_slider)
    w.addToolBar(tb)
    w.toolbar = tb

    # problems dock, hidden until asked for
    w.problems = ProblemsDock(w)
    w.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, w.problems)
    w.problems.hide()
    w.problems_action = w.problems.toggleViewAction()
    w.problems_action.setText("&Problems")

    # status bar: summary | problems | training | stage, progress, pause, stop
    sb = w.statusBar()
    sb.setObjectName("statusBar")
    sb.setSizeGripEnabled(True)
    w.summary_label = QLabel()
    w.summary_label.setObjectName("summaryLabel")
    sb.addWidget(w.summary_label, 1)
    w.problems_button = QToolButton()
    w.problems_button.setObjectName("problemsButton")
    w.problems_button.setAutoRaise(True)
    w.problems_button.setIcon(themed_icon("dialog-warning", QStyle.StandardPixmap.SP_MessageBoxWarning))
    w.problems_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    w.problems_button.clicked.connect(w.toggle_problems)
    w.problems_button.hide()
    sb.addPermanentWidget(w.problems_button)
    w.busy_label = QLabel()
    w.busy_label.setObjectName("busyLabel")
    w.busy_label.hide()
    sb.addPermanentWidget(w.busy_label)
    w.training_button = QToolButton()
    w.training_button.setObjectName("trainingButton")
    w.training_button.setAutoRaise(True)
    w.training_button.setToolTip("Teaching the captioner: click to see it")
    w.training_button.clicked.connect(w.things.show_training)
    w.training_button.hide()
    sb.addPermanentWidget(w.training_button)
    w.stage_label = QToolButton()
    w.stage_label.setObjectName("stageLabel")
    w.stage_label.setAutoRaise(True)
    w.stage_label.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    w.stage_label.clicked.connect(w.indexing_flow.show_stages)
    sb.addPermanentWidget(w.stage_label)
    w.progress_bar = QProgressBar()
    w.progress_bar.setObjectName("progressBar")
    w.progress_bar.setFixedWidth(160)
    w.progress_bar.setMaximumHeight(16)
    w.progress_bar.setTextVisible(False)
    w.progress_bar.hide()
    sb.addPermanentWidget(w.progress_bar)
    w.pause_button = QToolButton()
    w.pause_button.setObjectName("pauseButton")
    w.pause_button.setDefaultAction(w.pause_action)
    w.pause_button.setAutoRaise(True)
    w.pause_button.hide()
    sb.addPermanentWidget(w.pause_button)
    w.cancel_button = QToolButton()
    w.cancel_button.setObjectName("cancelButton")
    w.cancel_button.setDefaultAction(w.cancel_action)
    w.cancel_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
    w.cancel_button.setAutoRaise(True)
    w.cancel_button.hide()
    sb.addPermanentWidget(w.cancel_button)
    w.stages_popup = StagesPopup(w)

def make_empty_page(w: MainWindow) -> QWidget:
    page = QWidget()
    page.setObjectName("emptyPage")
    lay = QVBoxLayout(page)
    lay.addStretch(2)
    icon = QLabel()
    icon.setPixmap(app_icon().pixmap(96, 96))
    icon.setAlignment(Qt.AlignmentFlag.AlignCenter)
    title = QLabel("Your photos, on your computer")
    title.setObjectName("emptyTitle")
    title.setAlignment(Qt.AlignmentFlag.AlignCenter)
    text = QLabel("Add a folder of photos to get started. MyVLM Desktop never changes or uploads your files;\n"
                  "everything it learns stays in its library on this computer.")
    text.setObjectName("emptyText")
    text.setAlignment(Qt.AlignmentFlag.AlignCenter)
    text.setWordWrap(True)
    button = QPushButton(w.add_folder_action.icon(), "Add Folder…")
    button.setObjectName("emptyAddButton")
    button.clicked.connect(w.add_folder_action.trigger)
    button.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
    for label in (icon, title, text):
        lay.addWidget(label)
    lay.addSpacing(8)
    lay.addWidget(button, 0, Qt.AlignmentFlag.AlignHCenter)
    lay.addStretch(3)
    return page
