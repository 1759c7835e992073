"""Pages whose filter outcome is known by hand (the filter-evaluation and page-model tests share them)."""

PROSE = (
    "The river town grew slowly during the first half of the century, and most of its people worked "
    "in the mills that lined the eastern bank.\n"
    "Each morning the ferry carried farmers, teachers and merchants across the water to the market "
    "square, where stalls sold bread, cheese and fresh vegetables.\n"
    "In the winter of 1887 a flood destroyed the old bridge, so the council borrowed money to build a "
    "stone one that still stands today.\n"
    "Historians disagree about who designed it, but letters kept in the county archive suggest that a "
    "young engineer from the capital drew the first plans.\n"
    "Visitors who walk along the path beside the canal can still see the iron rings where barges were "
    "tied while their cargo was unloaded.\n"
    "The museum near the church has a small collection of tools, photographs and maps that show how the "
    "town changed over two hundred years.\n"
)
SHORT = "Thanks for reading, and have a good day with your friends."  # 11 words: gopher_min_words
