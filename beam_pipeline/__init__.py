"""The Apache Beam job: participant zips -> LV mass, LVMI, LVH -> Parquet (and TFRecords for training).

Only Beam lives here: the launcher (``pipeline``), the composites and DoFns (``transforms``), the model
handler (``inference``) and the local progress board the launcher reads (``progress``). Every step they run
is a plain function of :mod:`lvmass.core`; files go through :mod:`lvmass.storage`.
"""
