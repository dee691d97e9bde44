"""The Streamlit front end of ecaml: ``streamlit run app/main.py``.

It presents what the library computes and never computes it itself: no torch,
no metrics, no UMAP here, only ``ecaml`` calls, pandas, Plotly charts, and PIL thumbnails.
"""
