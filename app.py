"""`streamlit run app.py [-- --library DIR]`: the search page (the same as `search app`)."""

from search.web.page import main

main()
