# Configuration for the reno release notes (sphinx).
extensions = ['reno.sphinxext']
project = 'kata-zun Release Notes'
master_doc = 'index'
