-- Example queries over the pipeline's output, in the SQL subset DuckDB and BigQuery share.
--
-- Tables (both are views over the Parquet the pipeline writes):
--   lvmass         OUTPUT/lvmass/method=<m>/*.parquet  (hive-partitioned: the `method` column comes from the path)
--   lvmass_errors  OUTPUT/errors/*.parquet
-- DuckDB:
--   CREATE VIEW lvmass AS SELECT * FROM read_parquet('OUTPUT/lvmass/*/*.parquet', hive_partitioning = true);
--   CREATE VIEW lvmass_errors AS SELECT * FROM read_parquet('OUTPUT/errors/*.parquet');
-- BigQuery: external tables with hive partitioning (terraform/), then prefix the names with the dataset.
-- Statements are separated by semicolons; each is a standalone SELECT.

-- 1. Per-method summary: participants, mean raw and calibrated mass, LVMI, LVH prevalence, QC pass rate.
SELECT
  method,
  COUNT(*) AS participants,
  ROUND(AVG(lv_mass_raw_g), 1) AS mean_raw_mass_g,
  ROUND(AVG(lv_mass_g), 1) AS mean_mass_g,
  ROUND(AVG(lvmi_g_m2), 1) AS mean_lvmi_g_m2,
  SUM(CASE WHEN lvh THEN 1 ELSE 0 END) AS lvh_n,
  SUM(CASE WHEN lvh_p90 THEN 1 ELSE 0 END) AS lvh_p90_n,
  SUM(CASE WHEN qc_pass THEN 1 ELSE 0 END) AS qc_pass_n
FROM lvmass
GROUP BY method
ORDER BY method;

-- 2. Sex-stratified mass and LVH prevalence (QC-passing rows only).
SELECT
  method,
  sex,
  COUNT(*) AS participants,
  ROUND(AVG(lv_mass_g), 1) AS mean_mass_g,
  ROUND(AVG(CASE WHEN lvh THEN 1.0 ELSE 0.0 END), 3) AS lvh_fraction
FROM lvmass
WHERE qc_pass AND sex IS NOT NULL
GROUP BY method, sex
ORDER BY method, sex;

-- 3. Agreement of ML4H_seg with InlineVF per participant (paired rows of two partitions).
SELECT
  a.eid,
  a.instance,
  a.lv_mass_g AS ml4h_seg_mass_g,
  b.lv_mass_g AS inlinevf_mass_g,
  a.lv_mass_g - b.lv_mass_g AS difference_g
FROM lvmass AS a
JOIN lvmass AS b
  ON a.eid = b.eid AND a.instance = b.instance
WHERE a.method = 'ml4h_seg' AND b.method = 'inlinevf'
ORDER BY a.eid, a.instance;

-- 4. Participants failing QC, by the flags that failed them (one row per method and flag; a participant
--    failing on two flags counts under both). Informational flags (no_phenotype,
--    duplicate_slice_acquisition: contracts.QC_INFORMATIONAL_FLAGS) never fail a row and are left out.
SELECT
  method,
  flag,
  COUNT(*) AS participants
FROM lvmass
CROSS JOIN UNNEST(qc_flags) AS flag
WHERE qc_pass = false
  AND flag NOT IN ('no_phenotype', 'duplicate_slice_acquisition')
GROUP BY method, flag
ORDER BY method, participants DESC, flag;

-- 5. Failed inputs (dead letters) by stage and error type.
SELECT
  stage,
  error_type,
  COUNT(*) AS inputs
FROM lvmass_errors
GROUP BY stage, error_type
ORDER BY inputs DESC, stage, error_type;
