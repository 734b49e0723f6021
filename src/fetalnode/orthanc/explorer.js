// fetalnode: "Fetal AI" panel on the study, series and instance pages of Orthanc Explorer.
// Research use only, not for diagnosis. Served by fetalnode's Orthanc plugin (plugin.py).
(function () {
  var NOTICE = 'Research use only, not for diagnosis';

  function esc(s) {
    return String(s === undefined || s === null ? '' : s).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
    });
  }

  function mm(v) { return v === null || v === undefined ? 'n/a' : Number(v).toFixed(1) + ' mm'; }

  function links(f, imageLabel) {
    var html = '';
    if (f.heatmap_instance) {
      html += '<img class="fetalnode-heatmap" alt="fetalnode ' + esc(imageLabel) + '" style="max-width:480px;display:block" src="../instances/' +
        esc(f.heatmap_instance) + '/preview">';
      html += '<a data-ajax="false" target="_blank" href="../web-viewer/app/viewer.html?series=' + esc(f.heatmap_series) +
        '">Open the ' + esc(imageLabel) + ' in the web viewer</a>';
    }
    if (f.source_series) {
      html += ' | <a data-ajax="false" target="_blank" href="../web-viewer/app/viewer.html?series=' + esc(f.source_series) +
        '">Open the source image in the web viewer</a>';
    }
    return html;
  }

  // Labour progress (intrapartum transperineal image): angle of progression and head-symphysis distance,
  // with the literature reference they are read against; no normal/abnormal call.
  function renderLabour(f) {
    var html = '<div class="fetalnode-finding fetalnode-labour" style="border-left:6px solid #36c;' +
      'padding:6px 10px;margin:6px 0;background:#fafafa">';
    if (!f.analysed) {
      html += '<div class="fetalnode-assessment" style="font-size:1.2em"><b>Labour progress: ' + esc(f.assessment) + '</b></div>';
    } else {
      html += '<div class="fetalnode-assessment" style="font-size:1.2em"><b>Labour progress: angle of progression ' +
        '<span class="fetalnode-aop">' + Number(f.aop_deg).toFixed(1) + '&deg;</span></b></div>';
    }
    html += '<table style="margin:4px 0">';
    if (f.analysed) {
      var hsd = f.hsd_mm !== null && f.hsd_mm !== undefined ? mm(f.hsd_mm)
        : (f.hsd_px !== null && f.hsd_px !== undefined ? Number(f.hsd_px).toFixed(1) + ' pixels (no calibration)' : 'n/a');
      html += '<tr><td>Angle of progression (AoP)</td><td class="fetalnode-aop-value">' + Number(f.aop_deg).toFixed(1) + '&deg;</td></tr>';
      html += '<tr><td>Head-symphysis distance (HSD)</td><td class="fetalnode-hsd">' + esc(hsd) + '</td></tr>';
      html += '<tr><td>Literature reference</td><td class="fetalnode-aop-reference" style="max-width:480px">' +
        esc(f.aop_reference) + '</td></tr>';
    }
    html += '<tr><td>Models</td><td>' + esc((f.models || []).join(', ') || f.model) + '</td></tr>';
    html += '<tr><td>Analysed</td><td>' + esc(f.analysed_at) + '</td></tr></table>';
    html += links(f, 'angle of progression image');
    html += '<div style="color:#666;font-size:0.85em">' + esc((f.comments || []).slice(1).join(' ')) + '</div>';
    return html + '</div>';
  }

  function renderFinding(f) {
    if (!f.readable) {
      return '<div class="fetalnode-finding fetalnode-unreadable"><b>unreadable report</b> ' +
        '<span style="color:#666">(' + esc(f.error) + ')</span></div>';
    }
    if (f.application === 'labour-progress') { return renderLabour(f); }
    // A type only where the report names one; otherwise its note ("type not determined").
    var finding = esc(f.assessment) + (f.malformation_type ? ': ' + esc(f.malformation_type) :
      (f.type_note ? ' - <span class="fetalnode-type-note">' + esc(f.type_note) + '</span>' : ''));
    var html = '<div class="fetalnode-finding" style="' + (f.abnormal ? 'border-left:6px solid #c00;' : 'border-left:6px solid #2a7;') +
      'padding:6px 10px;margin:6px 0;background:#fafafa">';
    html += '<div class="fetalnode-assessment" style="font-size:1.2em"><b>' + finding + '</b>';
    if (f.confidence_pct !== null && f.confidence_pct !== undefined) {
      html += ' <span class="fetalnode-confidence">(confidence ' + Number(f.confidence_pct).toFixed(0) + '%)</span>';
    }
    html += '</div><table style="margin:4px 0">';
    html += '<tr><td>Head circumference (HC)</td><td class="fetalnode-hc">' + mm(f.hc_mm) + '</td></tr>';
    html += '<tr><td>Biparietal diameter (BPD)</td><td>' + mm(f.bpd_mm) + '</td></tr>';
    html += '<tr><td>Occipito-frontal diameter (OFD)</td><td>' + mm(f.ofd_mm) + '</td></tr>';
    html += '<tr><td>Gestational age from HC</td><td>' + (f.ga_weeks_hadlock ? esc(f.ga_weeks_hadlock) +
      ' weeks (estimate, Hadlock 1984)' : 'n/a') + '</td></tr>';
    html += '<tr><td>Models</td><td>' + esc((f.models || []).join(', ') || f.model) + '</td></tr>';
    html += '<tr><td>Analysed</td><td>' + esc(f.analysed_at) + '</td></tr></table>';
    html += links(f, 'heatmap');
    html += '<div style="color:#666;font-size:0.85em">' + esc((f.comments || []).slice(1).join(' ')) + '</div>';
    return html + '</div>';
  }

  function show(pageId) {
    var match = /uuid=([^&]+)/.exec(window.location.hash || '');
    var page = $('#' + pageId);
    page.find('.fetalnode-panel').remove();
    if (!match) { return; }
    var panel = $('<div class="fetalnode-panel" style="border:1px solid #bbb;padding:8px;margin:8px 0">' +
      '<h3 style="margin:0">Fetal AI <small style="color:#c00">' + NOTICE + '</small></h3>' +
      '<div class="fetalnode-body">loading...</div>' +
      '<a data-ajax="false" href="../fetalnode/triage">Triage list of all analysed images</a></div>');
    page.find('[data-role="content"]').first().prepend(panel);
    $.ajax({url: '../fetalnode/findings', data: {resource: match[1]}, dataType: 'json', cache: false,
      success: function (data) {
        var body = panel.find('.fetalnode-body');
        if (!data.findings.length) { body.text('No fetalnode report in this study.'); return; }
        body.html($.map(data.findings, renderFinding).join(''));
      },
      error: function (xhr) {
        panel.find('.fetalnode-body').text('fetalnode findings unavailable (HTTP ' + xhr.status + ')');
      }});
  }

  $.each(['study', 'series', 'instance'], function (_, id) {
    $(document).on('pageshow', '#' + id, function () { show(id); });
  });
})();
